import bundle
import bundle.archive
import bundle.models


def test_all_is_sorted_and_complete():
    for module in (bundle, bundle.models, bundle.archive):
        assert module.__all__ == sorted(module.__all__), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_exception_tree_exit_codes():
    assert bundle.InvalidBundle("x").exit_code == 3
    assert bundle.UnsupportedFormatVersion("x").exit_code == 4
    assert issubclass(bundle.UnsupportedFormatVersion, bundle.ArchiveError)
    assert bundle.UsageError("x").exit_code == 2
