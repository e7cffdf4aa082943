from multiip.cli import command

command()
