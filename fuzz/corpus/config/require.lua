local m = require("missing.module")
return m
