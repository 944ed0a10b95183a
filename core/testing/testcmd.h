/*
 * testcmd: `levee test [-c FILE] [SPEC...] [-- BUSTED-OPTIONS]` (README "Testing your
 * policies"): runs busted specs that use require("levee.testing") in a Lua state of this
 * process, with the module preloaded and the project's Lua directory on package.path.
 */
#ifndef LV_TESTING_TESTCMD_H
#define LV_TESTING_TESTCMD_H

/**
 * Runs the command on its arguments (those after "test"). Returns the exit code: 0 when every
 * spec passed, 1 when one failed or errored, 2 on a usage error (busted ends the process
 * itself with 1 on a failure).
 */
int lv_testcmd_main(int argc, char **argv);

#endif
