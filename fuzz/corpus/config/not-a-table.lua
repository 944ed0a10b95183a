return "levee"
