"""A pack whose import fails, as packs with missing dependencies do."""

import graphengine_test_missing_dependency  # noqa: F401

NODE_CLASS_MAPPINGS = {}
