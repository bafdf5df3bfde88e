"""The Flower apps: the ServerApp, the ClientApp and the torch-free device ClientApp.

Nothing heavy is imported here: a device SuperNode loads ``fedtune.app.device_app`` without torch.
"""

from pathlib import Path

# The Flower App's directory, which `simulations/...` paths in the run config are relative to:
# the repository root (fedtune/app/ is two levels below it).
APP_DIR = Path(__file__).resolve().parents[2]
