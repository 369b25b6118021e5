from utils.torchvision_compat import import_torchvision

# CPU torch + the CUDA-only torchvision wheel: define the missing op schemas before transformers
# imports torchvision (FACTS.md); a no-op where torchvision's extension loads.
import_torchvision()
