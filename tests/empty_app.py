"""An app with no handlers: `dispatchbox worker --config FILE` brings the routes."""

from dispatchbox import Dispatcher

dispatcher = Dispatcher()
