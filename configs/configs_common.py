"""Helper for config files that build on another config file in this folder."""
import importlib.util
import os


def load(name: str):
    """Import configs/<name>.py as a module (config files are loaded by path, not as a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"pilotrl_configs_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
