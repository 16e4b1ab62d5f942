"""The served dashboard as a Panel app file (`panel serve binder/app.py`): one run per browser session."""
from trainlab.widgets.app import create_app

create_app().servable(title="trainlab")
