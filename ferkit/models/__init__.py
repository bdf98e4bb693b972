"""Architectures. Importing this package registers every model (one module per paper)."""
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import create_model, list_models, register_model

# one import per architecture module; each runs its @register_model decorators
# (add a line here when you add an architecture file)
from ferkit.models import lightcnn  # noqa: F401,E402  (lightcnn9, netb)
from ferkit.models import tfe_jl  # noqa: F401,E402  (resnet18_fer, resnet12_fer, deepid, tfe_jl)
from ferkit.models import eifn  # noqa: F401,E402  (eifn)
from ferkit.models import fersnet  # noqa: F401,E402  (fersnet, fersnet_light)
from ferkit.models import live  # noqa: F401,E402  (resnet_live, the ferkit-live student)
from ferkit.models import ensemble  # noqa: F401,E402  (identity_ensemble)

__all__ = ["ModelOutput", "create_model", "list_models", "register_model"]
