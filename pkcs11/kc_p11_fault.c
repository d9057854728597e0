/* Fault injection: a copy of a module's CK_FUNCTION_LIST with one function
 * replaced by one that fails on its Nth call. Process-wide by design: it is a
 * test seam, armed before the module is loaded. Armed as "*", every function
 * of the table is replaced by one that only counts and times its calls. */
#include "kc_p11_int.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Each function of the table below, by the index its entry carries. */
enum {
    FI_C_GetSlotList,
    FI_C_GetTokenInfo,
    FI_C_InitToken,
    FI_C_InitPIN,
    FI_C_SetPIN,
    FI_C_OpenSession,
    FI_C_Login,
    FI_C_CreateObject,
    FI_C_DestroyObject,
    FI_C_GetAttributeValue,
    FI_C_FindObjectsInit,
    FI_C_FindObjects,
    FI_C_GenerateKeyPair,
    FI_C_WrapKey,
    FI_C_UnwrapKey,
    FI_C_GenerateRandom,
    FI_C_SetAttributeValue,
    FI_C_Sign,
    FI_C_Verify,
    KC_FAULT_MAX
};

static struct {
    char func[32];
    CK_RV rv;
    unsigned nth;
    int after;
    unsigned calls;
    double seconds;         /* spent inside the module by the calls passed through */
    CK_FUNCTION_LIST *orig; /* the module's own list, for calls that pass through */
    int every;              /* "*": all of them, timed, none failed */
    unsigned each_calls[KC_FAULT_MAX];
    double each_seconds[KC_FAULT_MAX];
} fault;

static int fault_known(const char *func);
static int fault_index(const char *func);

kc_rc kc_p11_fault_arm(const char *func, const char *rv_name, unsigned nth, int after,
                       kc_error *err)
{
    CK_RV rv;

    if (strcmp(func, "*") != 0 && !fault_known(func))
        return kc_error_set(err, KC_USAGE, "fault: '%s' cannot be faulted", func);
    if (!kc_p11_rv_from_name(rv_name, &rv))
        return kc_error_set(err, KC_USAGE, "unknown CK_RV name '%s'", rv_name);
    if (nth == 0)
        return kc_error_set(err, KC_USAGE, "fault: the call number counts from 1");
    memset(&fault, 0, sizeof(fault));
    snprintf(fault.func, sizeof(fault.func), "%s", func);
    fault.rv = rv;
    fault.nth = nth;
    fault.after = after;
    fault.every = strcmp(func, "*") == 0;
    return KC_OK;
}

void kc_p11_fault_disarm(void)
{
    memset(&fault, 0, sizeof(fault));
}

unsigned kc_p11_fault_calls(void)
{
    return fault.calls;
}

double kc_p11_fault_seconds(void)
{
    return fault.seconds;
}

unsigned kc_p11_fault_calls_of(const char *func)
{
    int i = fault_index(func);

    return i < 0 ? 0 : fault.each_calls[i];
}

double kc_p11_fault_seconds_of(const char *func)
{
    int i = fault_index(func);

    return i < 0 ? 0 : fault.each_seconds[i];
}

/* Only the fault copies read the clock: a module loaded unarmed never does. */
static double fault_clock(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether this call is the one to fail; counts every call. */
static int fault_hit(void)
{
    fault.calls++;
    return !fault.every && fault.calls == fault.nth;
}

/* A call passed through: its time, to the total and to its function's. */
static void fault_spent(int i, double t0)
{
    double took = fault_clock() - t0;

    fault.seconds += took;
    fault.each_calls[i]++;
    fault.each_seconds[i] += took;
}

/* A call that is not the one to fail reaches the module, timed. */
#define FAULT_PASS(name, PASS)                                                                     \
    if (!fault_hit()) {                                                                            \
        double t0 = fault_clock();                                                                 \
        real = fault.orig->name PASS;                                                              \
        fault_spent(FI_##name, t0);                                                                \
        return real;                                                                               \
    }

/* One replacement per function that tests fail. ARGS is the parameter list,
 * PASS the arguments passed through. */
#define FAULT_FN(name, ARGS, PASS)                                                                 \
    static CK_RV fault_##name ARGS                                                                 \
    {                                                                                              \
        CK_RV real;                                                                                \
        FAULT_PASS(name, PASS)                                                                     \
        if (!fault.after)                                                                          \
            return fault.rv;                                                                       \
        real = fault.orig->name PASS;                                                              \
        (void)real;                                                                                \
        return fault.rv;                                                                           \
    }

FAULT_FN(C_GetSlotList, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c))
FAULT_FN(C_GetTokenInfo, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b))
FAULT_FN(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d),
         (a, b, c, d))
FAULT_FN(C_InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (a, b, c))
FAULT_FN(C_SetPIN,
         (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e),
         (a, b, c, d, e))
FAULT_FN(C_OpenSession,
         (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e),
         (a, b, c, d, e))
FAULT_FN(C_Login, (CK_SESSION_HANDLE a, CK_USER_TYPE b, CK_UTF8CHAR_PTR c, CK_ULONG d),
         (a, b, c, d))
FAULT_FN(C_CreateObject,
         (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d),
         (a, b, c, d))
FAULT_FN(C_DestroyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
FAULT_FN(C_GetAttributeValue,
         (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
FAULT_FN(C_FindObjectsInit, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c))
/* Armed after with CKR_OK, the call reaches the module and its reply leaves
 * out what it found: a search that misses objects that are there (SoftHSM
 * 2.6.1 under parallel writers, kc_gendoc.h). */
static CK_RV fault_C_FindObjects(CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c,
                                 CK_ULONG_PTR d)
{
    CK_RV real;

    FAULT_PASS(C_FindObjects, (a, b, c, d))
    if (!fault.after)
        return fault.rv;
    real = fault.orig->C_FindObjects(a, b, c, d);
    if (real == CKR_OK && fault.rv == CKR_OK && d != NULL)
        *d = 0;
    return fault.rv;
}
FAULT_FN(C_GenerateKeyPair,
         (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d,
          CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h),
         (a, b, c, d, e, f, g, h))
FAULT_FN(C_WrapKey,
         (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d,
          CK_BYTE_PTR e, CK_ULONG_PTR f),
         (a, b, c, d, e, f))
FAULT_FN(C_UnwrapKey,
         (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e,
          CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h),
         (a, b, c, d, e, f, g, h))
FAULT_FN(C_GenerateRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
FAULT_FN(C_SetAttributeValue,
         (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
/* A failing C_Sign or C_Verify ends its operation in a module (PKCS#11: any
 * answer but CKR_BUFFER_TOO_SMALL or a size query does), so the injected
 * failure must end it too: these reach the module first, then fail. */
#define FAULT_OP(name, ARGS, PASS)                                                                 \
    static CK_RV fault_##name ARGS                                                                 \
    {                                                                                              \
        CK_RV real;                                                                                \
        FAULT_PASS(name, PASS)                                                                     \
        real = fault.orig->name PASS;                                                              \
        (void)real;                                                                                \
        return fault.rv;                                                                           \
    }

FAULT_OP(C_Sign, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e),
         (a, b, c, d, e))
FAULT_OP(C_Verify, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e),
         (a, b, c, d, e))

#define FAULT_ENTRY(name)                                                                          \
    {                                                                                              \
#name, offsetof(CK_FUNCTION_LIST, name), (void (*)(void))fault_##name, FI_##name           \
    }
static const struct {
    const char *name;
    size_t offset;
    void (*fn)(void);
    int index; /* in fault.each_* */
} fault_table[] = {
    FAULT_ENTRY(C_GetSlotList),
    FAULT_ENTRY(C_GetTokenInfo),
    FAULT_ENTRY(C_InitToken),
    FAULT_ENTRY(C_InitPIN),
    FAULT_ENTRY(C_SetPIN),
    FAULT_ENTRY(C_OpenSession),
    FAULT_ENTRY(C_Login),
    FAULT_ENTRY(C_CreateObject),
    FAULT_ENTRY(C_DestroyObject),
    FAULT_ENTRY(C_GetAttributeValue),
    FAULT_ENTRY(C_FindObjectsInit),
    FAULT_ENTRY(C_FindObjects),
    FAULT_ENTRY(C_GenerateKeyPair),
    FAULT_ENTRY(C_WrapKey),
    FAULT_ENTRY(C_UnwrapKey),
    FAULT_ENTRY(C_GenerateRandom),
    FAULT_ENTRY(C_SetAttributeValue),
    FAULT_ENTRY(C_Sign),
    FAULT_ENTRY(C_Verify),
};

static int fault_index(const char *func)
{
    size_t i;

    for (i = 0; i < sizeof(fault_table) / sizeof(fault_table[0]); i++)
        if (strcmp(fault_table[i].name, func) == 0)
            return fault_table[i].index;
    return -1;
}

_Static_assert(sizeof(fault_table) / sizeof(fault_table[0]) == KC_FAULT_MAX,
               "one FI_ name per function of the seam");

static int fault_known(const char *func)
{
    return fault_index(func) >= 0;
}

CK_FUNCTION_LIST *kc_p11_fault_wrap(CK_FUNCTION_LIST *f)
{
    CK_FUNCTION_LIST *copy = NULL;
    size_t i;

    if (fault.func[0] == '\0' || (!fault.every && !fault_known(fault.func)))
        return f;
    copy = malloc(sizeof(*copy));
    if (copy == NULL)
        return f;
    *copy = *f;
    for (i = 0; i < sizeof(fault_table) / sizeof(fault_table[0]); i++)
        if (fault.every || strcmp(fault_table[i].name, fault.func) == 0)
            memcpy((char *)copy + fault_table[i].offset, &fault_table[i].fn,
                   sizeof(fault_table[i].fn));
    fault.orig = f;
    fault.calls = 0;
    fault.seconds = 0;
    memset(fault.each_calls, 0, sizeof(fault.each_calls));
    memset(fault.each_seconds, 0, sizeof(fault.each_seconds));
    return copy;
}

void kc_p11_fault_release(CK_FUNCTION_LIST *wrapped, CK_FUNCTION_LIST *orig)
{
    if (wrapped != orig)
        free(wrapped);
}
