#!/usr/bin/env levee
return { routes = {} }
