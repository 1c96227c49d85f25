"""Only under emulation: `cargo xtask test-kernels` boots other kernels under QEMU
TCG, where every process runs some 50x slower, and sets PIA_TEST_TIME_SCALE. The
tests then put this directory on PYTHONPATH of the pods' AWS clients (the AWS CLI,
boto3), and nowhere else.

botocore gives the container credentials endpoint 2 s per attempt, hard-coded
(`ContainerMetadataFetcher.TIMEOUT_SECONDS`, no setting or variable): the one
client-side wait the tests cannot stretch otherwise. This stretches it by the same
factor as every other wait of the tests, when botocore.utils is first imported (so
a Python that never imports botocore pays nothing). Nothing else changes.
"""
import os
import sys

try:
    _SCALE = max(1.0, float(os.environ.get("PIA_TEST_TIME_SCALE") or 1))
except ValueError:
    _SCALE = 1.0


class _StretchBotocoreTimeout:
    """A meta path finder that only wraps the loading of botocore.utils."""

    def find_spec(self, name, path=None, target=None):
        if name != "botocore.utils":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            fetcher = module.ContainerMetadataFetcher
            fetcher.TIMEOUT_SECONDS = fetcher.TIMEOUT_SECONDS * _SCALE

        spec.loader.exec_module = exec_module
        return spec


if _SCALE > 1:
    sys.meta_path.insert(0, _StretchBotocoreTimeout())
