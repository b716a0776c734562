"""The quantizer kinds, one module each. A module registers its class with
``codec.quant.base.register_kind`` and is imported here by discovery, so adding a kind is
adding one file to this folder."""
from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
