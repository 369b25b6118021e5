"""`python3 -m evaluation.test`: every environment's tests (evaluation/launch/tests.py); the README's second command."""
from evaluation.launch.tests import main

if __name__ == "__main__":
    raise SystemExit(main())
