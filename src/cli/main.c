#include "cli.h"
#include "kc_secret.h"

#include <stdlib.h>

int main(int argc, char **argv)
{
    /* No core file may hold a PIN or an unwrapped key. */
    (void)kc_secret_harden_process();
    return kc_cli_main(argc, argv, stdout, stderr);
}
