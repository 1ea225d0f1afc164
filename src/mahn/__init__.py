"""mahn: multimodal sequential recommendation (MAHN and its baselines) with a sound evaluation protocol."""

__version__ = "0.1.0"
