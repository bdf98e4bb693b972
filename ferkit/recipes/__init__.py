"""Training recipes, one module per paper. Importing this package registers them all.
(add one import line here per recipe module)"""
from ferkit.recipes import netb  # noqa: F401,E402  (netb/lightcnn-identity, netb/fer2013, netb/ferplus)
from ferkit.recipes import eifn  # noqa: F401,E402  (eifn/ckplus, eifn/ferplus-stage1)
from ferkit.recipes import tfe_jl  # noqa: F401,E402  (tfe-jl/deepid-identity, resnet18-ferplus, resnet12-ckplus, joint-*)
from ferkit.recipes import fersnet  # noqa: F401,E402  (fersnet/ckplus, fersnet/ferplus)
from ferkit.recipes import live  # noqa: F401,E402  (live/ferplus-distill, the ferkit-live student)
