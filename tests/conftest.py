import pytest
import torch


def _cuda_kernels_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import ops
    except ImportError:
        return False
    return ops.BUILT_WITH_CUDA


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` (a test or one of its parameters) are skipped, with the reason shown,
    unless a CUDA device is visible and detbench was built with CUDA kernels."""
    if _cuda_kernels_usable():
        return
    reason = "needs a CUDA device and a CUDA build of detbench (torch.cuda.is_available() and ops.BUILT_WITH_CUDA)"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def validation():
    """Validation mode (ops.set_validation) on for one test."""
    import ops

    ops.set_validation(True)
    yield
    ops.set_validation(False)
