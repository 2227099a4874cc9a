"""Settings for the whole test session."""
import os

# Ray (the sweep tests' backend) listens on loopback only: by default a Linux Ray node binds to the
# machine's own network address, and these tests must not send traffic anywhere but 127.0.0.1.
# Set before any test imports ray (the setting is read when ray is imported); the subprocesses
# the tests start (`ray start`, `python -m rnnlab`) inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
