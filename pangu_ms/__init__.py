"""pangu_ms: a MindSpore-native reference implementation of PanGu-alpha and PanGu-Sigma."""
__version__ = "0.1.0"
