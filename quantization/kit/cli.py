"""A route process's command line: `--plan FILE` (what the launchers pass) or a route's own flags turned into a plan
by the same builder; and the public build API of the analysis tools (build_variant)."""
from __future__ import annotations

import argparse
from typing import Callable

from quantization.kit.config import RouteConfig, check_plan_alone, plan_from_args, route_parser
from utils.errors import RouteUnavailable, SuiteError, cli_main, setup_logging
from utils.plan import Plan
from quantization.kit.contract import Built, ModelContext, Route, open_model, route_for
from quantization.kit.runner import execute


def parser_for(route: Route) -> argparse.ArgumentParser:
    ap = route_parser(route.toolchain, route.description)
    route.add_options(ap)
    return ap


def build_variant(toolchain: str, model: str, method: str, *, device: str | None = None, argv: list[str] | None = None,
                  **config) -> tuple[ModelContext, Built]:
    """The public build API for analysis tools: one variant of one toolchain, built exactly as the bench builds it.

    `argv` are route flags (e.g. ["--calib-samples", "128"]); keyword `config` overrides RouteConfig fields.
    """
    import dataclasses

    route = route_for(toolchain)
    args = parser_for(route).parse_args(["--models", model, "--methods", method, *(argv or [])])
    plan = plan_from_args(toolchain, args)
    items = [it for it in plan.items if device is None or it.device == device]
    if not items:
        raise SuiteError(f"{toolchain} has no {method} variant of {model} on {device}")
    cfg = dataclasses.replace(RouteConfig.from_plan(toolchain, plan), **config)
    opts = route.options(args)
    why = route.unavailable(opts)
    if why:
        raise RouteUnavailable(why)
    ctx = open_model(route, cfg, model, opts)
    return ctx, route.build(ctx, method, items[0].precision, items[0].device)


def run(route: Route, argv: list[str] | None = None) -> int:
    """A route process: `--plan FILE` (what the bench passes) runs exactly this toolchain's items of that plan; the
    flags of a route started on its own become a plan through the same builder. A route that cannot run here
    writes skipped rows for every item."""
    import os

    ap = parser_for(route)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    if args.plan is not None:
        check_plan_alone(ap, args)
        plan = Plan.load(args.plan)
        own = plan.route_args.get(route.toolchain)
        opts = route.options(ap.parse_args(own) if own else args)
    else:
        plan = plan_from_args(route.toolchain, args)
        opts = route.options(args)
    if plan.run_id and not os.environ.get("SUITE_RUN_ID"):
        os.environ["SUITE_RUN_ID"] = plan.run_id  # the rows' provenance
    return execute(route, plan, plan.items_of(route.toolchain), opts)


def main_for(route: Route) -> Callable[[list[str] | None], int]:
    """A route module's `main`: `if __name__ == "__main__": raise SystemExit(main_for(ROUTE)())`."""
    return cli_main(lambda argv=None: run(route, argv))
