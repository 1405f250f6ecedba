"""placeholder"""
HELP = "todo"
