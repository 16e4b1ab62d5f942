"""The served dashboard as a Panel app file: one run per browser session.

On Binder, jupyter-panel-proxy serves it at /panel/dashboard (see jupyter-panel-proxy.yml); anywhere,
`panel serve binder/dashboard.py`. Its name must not be a module it imports: Bokeh puts this folder
first on sys.path while it runs the file.
"""
from trainlab.widgets.app import create_app

create_app().servable(title="trainlab")
