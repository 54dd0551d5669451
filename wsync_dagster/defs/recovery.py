"""Where the Dagster daemon runs: a sensor that fails runs whose process is gone, so they block no delivery."""

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from wsync_dagster.recovery import recover_abandoned_runs

RECOVERY_SENSOR = "wsync_recover_abandoned_runs"
# A UI materialization or a schedule tick waiting behind a killed `wsync run` goes ahead this soon.
RECOVERY_INTERVAL_SECONDS = 10


def build_recovery_sensor() -> SensorDefinition:
    """The sensor that marks failed the runs whose process is gone (a killed `wsync run`) and frees their slots."""

    @sensor(
        name=RECOVERY_SENSOR,
        minimum_interval_seconds=RECOVERY_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="Marks failed the runs whose process is gone (a killed `wsync run`) and frees their "
        "pool slots, so that the deliveries after them do not wait",
    )
    def recover_abandoned(context: SensorEvaluationContext) -> SkipReason:
        recovered = recover_abandoned_runs(context.instance)
        for run in recovered:
            context.log.info(str(run))
        return SkipReason(
            "; ".join(str(run) for run in recovered) if recovered else "every unfinished run has its process"
        )

    return recover_abandoned
