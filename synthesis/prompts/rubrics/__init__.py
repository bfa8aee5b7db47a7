"""Built-in judge rubrics (plain text files; a recipe names one by its file name)."""
