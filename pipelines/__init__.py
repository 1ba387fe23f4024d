"""Offline jobs: ingest, feature stores, training, fine-tuning, evaluation (each a ``python -m pipelines.<job>`` CLI)."""
import sys

if sys.argv[:1] == ["-m"]:
    # ``python -m pipelines.<job>``: Python imports this package while it still looks for the
    # job's module (sys.argv[0] is '-m' until then). A bad AUDIO_DCLS_* setting makes
    # ``import audio_dcls`` raise ValueError before the job's own error handling exists;
    # report it the way every job reports bad input: one line, non-zero exit, no traceback.
    try:
        import audio_dcls.ops  # noqa: F401
    except ValueError as _error:
        print(f"pipelines: error: {' '.join(str(_error).split())}", file=sys.stderr)
        raise SystemExit(2) from None
