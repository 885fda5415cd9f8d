"""``python -m runtime.compat``: the script's ``__main__``, argv, sys.path and exit status."""

import textwrap

from .launch import run_compat

SCRIPT = textwrap.dedent("""
    import sys
    import torch, torch_npu, torchair
    import sibling
    print("name", __name__, "argv", sys.argv[1:], "device", torch.ones(1).npu().device.type, sibling.VALUE)
    sys.exit(int(sys.argv[-1]))
""")


def test_script_runs_as_main_with_its_argv_and_exit_status(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    (tmp_path / "sibling.py").write_text("VALUE = 'sibling-imported'\n")
    proc = run_compat(str(tmp_path / "script.py"), "--flag", "x y", "3")
    assert proc.returncode == 3, proc.stderr
    import npu_kernels as nk
    assert proc.stdout.split("\n")[0] == (f"name __main__ argv ['--flag', 'x y', '3'] device "
                                          f"{nk.npu_device().type} sibling-imported")


def test_module_mode_and_usage_errors(tmp_path):
    (tmp_path / "mod_check.py").write_text("import sys, torch_npu\nprint(__name__, sys.argv)\n")
    proc = run_compat("-m", "mod_check", "a", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"__main__ [{str(tmp_path / 'mod_check.py')!r}, 'a']"
    missing = run_compat(str(tmp_path / "missing.py"))
    assert missing.returncode == 2 and "can't open file" in missing.stderr
    failing = run_compat("-m", "mod_check_missing", cwd=tmp_path)
    assert failing.returncode == 1 and "No module named mod_check_missing" in failing.stderr
