/*
 * Checking your app's license at start-up with libkeysmith: copy this.
 *
 *   license_check SERVER_URL PUBLIC_KEY LICENSE_KEY [CACHE_DIR]
 *
 * or set KEYSMITH_SERVER, KEYSMITH_PUBLIC_KEY, KEYSMITH_KEY and
 * KEYSMITH_CACHE_DIR. In a real app the server URL and the public key are
 * compiled in (never fetch the public key at run time), the license key
 * comes from the user, and the cache dir is left NULL (the platform's cache
 * dir for your app id).
 *
 * Exit status: 0 licensed, 1 not licensed (a decided answer), 2 no answer
 * at all (bad setup, or offline with nothing usable cached).
 *
 * Build (see ffi/README.md; the rpath lets it find libkeysmith.so where
 * ffi/install.sh put it):
 *   cc -std=c99 license_check.c $(pkg-config --cflags --libs keysmith) -Wl,-rpath,/opt/keysmith/lib
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keysmith.h"

/* Names your app: it salts the cache and picks its default location. */
#define APP_ID "acme-editor"

/* What to tell your user for each answer. Codes you do not list (new ones
 * may come) fall back to the library's own sentence. */
static const struct {
    const char *code;
    const char *message;
} MESSAGES[] = {
    {"VALID", "Thank you for your purchase!"},
    {"KEY_MALFORMED", "That license key has a typo: please check it against your receipt."},
    {"LICENSE_NOT_FOUND", "We do not know that license key: please check your receipt."},
    {"LICENSE_SUSPENDED", "Your license is suspended: please contact support."},
    {"LICENSE_REVOKED", "Your license has been revoked: please contact support."},
    {"LICENSE_EXPIRED", "Your license has expired: renew it to keep using the app."},
    {"DOMAIN_LIMIT_REACHED", "Your license is in use on as many sites as it allows."},
    {"MACHINE_LIMIT_REACHED",
     "Your license is in use on as many computers as it allows: free one first."},
    {"OFFLINE_GRACE_EXPIRED",
     "We could not reach the license server for too long: please go online once."},
    {"CLOCK_TAMPERED", "Your computer's clock looks wrong: please set it to the right time."},
};

static const char *arg_or_env(int argc, char **argv, int index, const char *env) {
    if (index < argc && argv[index][0] != '\0') {
        return argv[index];
    }
    const char *value = getenv(env);
    return (value != NULL && value[0] != '\0') ? value : NULL;
}

static const char *friendly(const ks_validation *answer) {
    const char *code = ks_validation_code(answer);
    for (size_t i = 0; i < sizeof MESSAGES / sizeof MESSAGES[0]; i++) {
        if (strcmp(code, MESSAGES[i].code) == 0) {
            return MESSAGES[i].message;
        }
    }
    return ks_validation_message(answer);
}

int main(int argc, char **argv) {
    const char *server = arg_or_env(argc, argv, 1, "KEYSMITH_SERVER");
    const char *public_key = arg_or_env(argc, argv, 2, "KEYSMITH_PUBLIC_KEY");
    const char *license_key = arg_or_env(argc, argv, 3, "KEYSMITH_KEY");
    const char *cache_dir = arg_or_env(argc, argv, 4, "KEYSMITH_CACHE_DIR"); /* NULL: default */
    if (server == NULL || public_key == NULL || license_key == NULL) {
        fprintf(stderr, "usage: %s SERVER_URL PUBLIC_KEY LICENSE_KEY [CACHE_DIR]\n", argv[0]);
        return 2;
    }

    ks_client *client = NULL;
    ks_result result = ks_client_new(server, public_key, APP_ID, cache_dir, &client);
    if (result != KS_OK) {
        fprintf(stderr, "The license check is misconfigured: %s (%s)\n", ks_result_str(result),
                ks_last_error());
        return 2;
    }

    ks_validation *answer = NULL;
    result = ks_client_validate(client, license_key, NULL, NULL, &answer);
    if (result != KS_OK) {
        /* No answer at all: offline, and nothing usable in the cache. */
        fprintf(stderr, "We could not check your license: %s.\n(%s)\n", ks_result_str(result),
                ks_last_error());
        ks_client_free(client);
        return 2;
    }

    printf("License check: %s (%s)\n", ks_validation_code(answer), ks_validation_source(answer));
    printf("%s\n", friendly(answer));
    int licensed = ks_validation_valid(answer);
    if (licensed) {
        const char *plan = ks_validation_plan(answer);
        printf("Plan: %s\n", plan != NULL ? plan : "(none)");
        printf("Features:");
        for (size_t i = 0; i < ks_validation_features_len(answer); i++) {
            printf(" %s", ks_validation_feature(answer, i));
        }
        printf("\n");
        int64_t expires_at = ks_validation_expires_at(answer);
        if (expires_at < 0) {
            printf("Expires: never\n");
        } else {
            time_t t = (time_t)expires_at;
            char date[32];
            strftime(date, sizeof date, "%Y-%m-%d", gmtime(&t));
            printf("Expires: %s\n", date);
        }
        /* Gate features on ks_validation_has_feature: false unless valid. */
        if (ks_validation_has_feature(answer, "sso")) {
            printf("Single sign-on is enabled.\n");
        }
    }

    ks_validation_free(answer);
    ks_client_free(client);
    return licensed ? 0 : 1;
}
