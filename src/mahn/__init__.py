"""mahn: multimodal sequential recommendation (MAHN and its baselines) with a sound evaluation protocol."""

__version__ = "0.1.0"


def __getattr__(name: str):  # `mahn.load` without importing torch at `import mahn`
    if name == "load":
        from mahn.api import load

        return load
    raise AttributeError(f"module 'mahn' has no attribute {name!r}")
