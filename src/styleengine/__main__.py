from styleengine.cli import app

app()
