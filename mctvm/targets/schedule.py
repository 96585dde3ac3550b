"""ApplySchedules: dlight-style default schedules that skip a rule when it fails on a kernel."""

from __future__ import annotations

import logging

import tvm
from tvm import tirx

log = logging.getLogger("mctvm.schedule")


@tvm.transform.module_pass(opt_level=0, name="mctvm.ApplySchedules")
class ApplySchedules:
    """Apply the first rule that schedules each PrimFunc; a rule that raises is skipped.

    dlight's ApplyDefaultSchedule aborts the whole build when one rule fails on one kernel
    (its CPU GEMV rule does on AlexNet's dense layers); here the next rule gets its turn and
    the kernel stays unscheduled, which is still correct code, only slower.
    """

    def __init__(self, *rules):
        self.rules = list(rules)

    def transform_module(self, mod, _ctx):
        target = tvm.target.Target.current(allow_none=False)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", 0):
                continue
            scheduled = self._schedule(gvar.name_hint, func, target)
            if scheduled is not None:
                updates[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    def _schedule(self, name, func, target):
        for rule in self.rules:
            try:
                space = rule.apply(func, target, False)
            except (RuntimeError, ValueError) as err:  # ScheduleError is a RuntimeError
                log.info("rule %s failed on %s: %s", type(rule).__name__, name,
                         str(err).splitlines()[0])
                continue
            if space is None:
                continue
            schedule = space[0] if isinstance(space, list) else space
            return schedule.mod["main"]
        return None
