"""Launchers: what runs a plan and where (the bench, Ray, the GPU check, the sweeps), the suite's environments, and
the test command's runner. Stdlib only: every module here runs under the bare system Python (the Ray driver in the
`ray` environment)."""
