"""`python3 -m evaluation.bench`: the main job (evaluation/launch/bench.py); the README's first command."""
from evaluation.launch.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
