"""Planning: what the controller would do, decided from a `World` (pure, no I/O).

`plan` turns each changed service into a `ServicePlan` (placement from the scheduler,
residency from the engine, rollout and drain steps); `impact` compares two worlds for a
policy's dry run; `what_if` is the drill plan. The controller, the drill runner and the
API's explain and dry-run views all call these; none of them imports another to do so.
"""
