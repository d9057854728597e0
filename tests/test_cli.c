#include "fixture.h"
static const kc_test_case none[] = {{NULL, NULL}};
static const kc_test_suite suites[] = {{"x", 0, none}, {NULL, 0, NULL}};
int main(int argc, char **argv) { return kc_test_main(argc, argv, suites); }
