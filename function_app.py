"""Azure Functions entry points (Python v2 programming model).

Two triggers drive the same core: a timer runs the stage loop over every
configured stage, and the Cosmos DB change feed, when switched on, hands over
items as they change. Both only read the trigger and call ``worker.functions``.
"""

import os
from pathlib import Path

import azure.functions as func

from worker import functions

# Read once, while the host indexes the app: bindings are fixed at that moment,
# so the change-feed switch has to be known here. A change of app settings
# restarts the host, which indexes the app again and so sees the new value. A
# missing or malformed setting raises here, and the host reports the app as
# failing to load with this message, instead of starting without a trigger.
SETTINGS = functions.indexing_settings(os.environ, Path(__file__).with_name("host.json"))

app = func.FunctionApp()


@app.timer_trigger(
    arg_name="timer",
    schedule="%WORKER_SCHEDULE%",
    # Every restart and scale-out would otherwise start an extra, unscheduled run.
    run_on_startup=False,
    # Keep the schedule's state in storage, so that a missed run is caught up
    # (and reported as past due) after a restart.
    use_monitor=True,
)
async def stage_loop(timer: func.TimerRequest) -> None:
    await functions.run_timer(os.environ, SETTINGS.run_budget, past_due=timer.past_due)


if SETTINGS.change_feed:

    @app.cosmos_db_trigger(
        arg_name="documents",
        # Identity-based: the host reads COSMOS__accountEndpoint, COSMOS__credential
        # and COSMOS__clientId; a key-based COSMOS connection string works too.
        connection="COSMOS",
        database_name="%COSMOS_DATABASE%",
        container_name="%COSMOS_CONTAINER%",
        lease_container_name="%COSMOS_LEASE_CONTAINER%",
        # A managed identity may not create containers; the infrastructure does.
        create_lease_container_if_not_exists=False,
    )
    async def change_feed(documents: func.DocumentList) -> None:
        await functions.run_feed(os.environ, documents, SETTINGS.run_budget)
