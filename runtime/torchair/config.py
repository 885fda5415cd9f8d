"""``CompilerConfig``: the configuration fields of torchair users touch (spec/runtime.md §3.6)."""

from __future__ import annotations

MODES = ("max-autotune", "reduce-overhead", "npugraph_ex")


class _Section:
    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class AclGraphDebugConfig(_Section):
    def __init__(self):
        self.static_capture_size_limit = 64     # captures per compiled graph before falling back to eager
        self.clone_input = True                 # copy inputs into the captured buffers before a replay
        self.enable_output_clone = False        # return clones of the captured outputs
        self.disable_mempool_reuse_in_same_fx = False
        self.disable_reinplace_inplaceable_ops_pass = False
        self.disable_reinplace_input_mutated_ops_pass = False
        self.remove_cat_ops = False


class DebugConfig(_Section):
    def __init__(self):
        self.run_eagerly = False
        self.aclgraph = AclGraphDebugConfig()


class AclGraphConfig(_Section):
    def __init__(self):
        self.use_custom_pool = None             # a graph_pool_handle() shared by the captures
        self.capture_error_mode = "global"
        self.num_warmup_iters = 1               # eager runs before a capture (kernels compile there)


class AclGraphExperimentalConfig(_Section):
    """How the NPU compiles the kernels of a captured graph (static-shape aclnn kernels, super kernels):
    accepted and without effect here, where kernels do not depend on them."""

    def __init__(self):
        self._aclnn_static_shape_kernel = False
        self._aclnn_static_shape_kernel_build_dir = None
        self._aclnn_static_shape_kernel_sym_value_range = None
        self._super_kernel_optimize = False
        self._super_kernel_optimize_options = None


class ExperimentalConfig(_Section):
    def __init__(self):
        self.frozen_parameter = False
        self.remove_noop_ops = True
        self.pattern_fusion_pass = True
        self.aclgraph = AclGraphExperimentalConfig()


class CompilerConfig(_Section):
    """``torchair.CompilerConfig``; ``mode`` is ``max-autotune`` (default), ``reduce-overhead`` or
    ``npugraph_ex`` (the same capture backend here)."""

    def __init__(self):
        self.mode = "max-autotune"
        self.debug = DebugConfig()
        self.aclgraph_config = AclGraphConfig()
        self.experimental_config = ExperimentalConfig()

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"CompilerConfig.mode={self.mode!r}: expected one of {', '.join(MODES)}")
