"""The notification hook: a Prefect automation that fires when any InstructRec flow run fails or crashes.

With INSTRUCTREC_NOTIFY_URL set it POSTs a JSON message there (a Webhook block the automation calls:
Slack, a pager, a test's listener); without it the automation does nothing but is listed, enabled,
in the UI's Automations page with every firing, ready for an action of your choice.
Run against a server: `python -m ops.automations` (`instructrec stack up` does).
"""

from __future__ import annotations

import os

from prefect.automations import Automation
from prefect.blocks.webhook import Webhook
from prefect.events.actions import CallWebhook, DoNothing
from prefect.events.schemas.automations import EventTrigger, Posture

FAILURE_AUTOMATION = "instructrec-flow-failed"
NOTIFY_BLOCK = "instructrec-failure-webhook"
FAILED_STATES = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")
MESSAGE = (
    '{"text": "InstructRec flow run {{ flow_run.name }} ({{ flow.name }}) ended {{ flow_run.state.name }}: '
    '{{ flow_run.state.message | replace(\'\\"\', \'\') }}", "flow_run_id": "{{ flow_run.id }}", '
    '"state": "{{ flow_run.state.name }}"}'
)


def failure_automation(notify_url: str | None) -> Automation:
    """Every flow run tagged `instructrec` (all deployments in prefect.yaml) that fails or crashes."""
    if notify_url:
        block_id = Webhook(method="POST", url=notify_url).save(NOTIFY_BLOCK, overwrite=True)
        action = CallWebhook(block_document_id=block_id, payload=MESSAGE)
    else:
        action = DoNothing()
    trigger = EventTrigger(
        expect=set(FAILED_STATES),
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.instructrec"},
        posture=Posture.Reactive,
        threshold=1,
    )
    return Automation(
        name=FAILURE_AUTOMATION,
        description="A failed or crashed InstructRec flow run: notify.",
        trigger=trigger,
        actions=[action],
    )


def install(notify_url: str | None = None) -> Automation:
    """Create the automation, replacing an earlier one of the same name (re-running `stack up` is safe)."""
    try:
        Automation.read(name=FAILURE_AUTOMATION).delete()
    except ValueError:
        pass
    return failure_automation(notify_url).create()


if __name__ == "__main__":
    created = install(os.environ.get("INSTRUCTREC_NOTIFY_URL"))
    print(f"automation {created.name}: {created.id} ({created.actions[0].type})")
