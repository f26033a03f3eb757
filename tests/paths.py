"""The repository the tests run from (luna itself never resolves paths against it)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
