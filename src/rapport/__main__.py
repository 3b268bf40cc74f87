from rapport.cli import app

app(prog_name="rapport")
