"""The card-holder web portal: card number + PIN in, balance and calls out.

`create_app` builds the Starlette app over the control process's Store; `start_portal_thread` serves
it on a thread of the control process. The rules (login, lockout, statement) live in
`control.portal.statement`, the web security in `control.portal.security`.
"""

from control.portal.app import create_app
from control.portal.server import run_portal, start_portal_thread

__all__ = ["create_app", "run_portal", "start_portal_thread"]
