"""The main job (``python -m runtime.demo``): operators against references and a small model served with
captured, task-updated graphs."""
