// Checking your app's license at start-up from C++17 with libkeysmith:
// RAII handles around the C API, and an exception when there is no answer.
//
//   license_check_cpp SERVER_URL PUBLIC_KEY LICENSE_KEY [CACHE_DIR]
//
// Exit status: 0 licensed, 1 not licensed, 2 no answer at all.
// Build (the rpath: where ffi/install.sh put libkeysmith.so):
//   c++ -std=c++17 license_check.cpp $(pkg-config --cflags --libs keysmith) -Wl,-rpath,/opt/keysmith/lib
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "keysmith.h"

namespace keysmith {

// No answer (bad setup, or offline with nothing usable cached).
class Error : public std::runtime_error {
  public:
    Error(ks_result result, const std::string &what)
        : std::runtime_error(what + ": " + ks_result_str(result) + " (" + ks_last_error() + ")"),
          result_(result) {}
    ks_result result() const noexcept { return result_; }

  private:
    ks_result result_;
};

// A decided answer, copied out of the ks_validation.
struct Validation {
    bool valid;
    std::string code;
    std::string source;
    std::string message;
    std::optional<std::string> plan;
    std::vector<std::string> features;
    std::optional<std::int64_t> expires_at; // Unix seconds; empty = never

    bool has_feature(const std::string &feature) const {
        if (!valid) {
            return false;
        }
        for (const auto &f : features) {
            if (f == feature) {
                return true;
            }
        }
        return false;
    }
};

// Thread-safe: share one Client between threads.
class Client {
  public:
    Client(const std::string &server_url, const std::string &public_key, const std::string &app_id,
           const std::optional<std::string> &cache_dir = std::nullopt) {
        ks_client *raw = nullptr;
        ks_result r = ks_client_new(server_url.c_str(), public_key.c_str(), app_id.c_str(),
                                    cache_dir ? cache_dir->c_str() : nullptr, &raw);
        if (r != KS_OK) {
            throw Error(r, "cannot make the license client");
        }
        client_.reset(raw);
    }

    Validation validate(const std::string &key, const char *domain = nullptr,
                        const char *fingerprint = nullptr) const {
        ks_validation *raw = nullptr;
        ks_result r = ks_client_validate(client_.get(), key.c_str(), domain, fingerprint, &raw);
        if (r != KS_OK) {
            throw Error(r, "no answer about the license");
        }
        std::unique_ptr<ks_validation, decltype(&ks_validation_free)> answer(raw,
                                                                              ks_validation_free);
        Validation v{};
        v.valid = ks_validation_valid(answer.get());
        v.code = ks_validation_code(answer.get());
        v.source = ks_validation_source(answer.get());
        v.message = ks_validation_message(answer.get());
        if (const char *plan = ks_validation_plan(answer.get())) {
            v.plan = plan;
        }
        for (std::size_t i = 0; i < ks_validation_features_len(answer.get()); i++) {
            v.features.emplace_back(ks_validation_feature(answer.get(), i));
        }
        if (std::int64_t at = ks_validation_expires_at(answer.get()); at >= 0) {
            v.expires_at = at;
        }
        return v;
    }

  private:
    struct Free {
        void operator()(ks_client *c) const noexcept { ks_client_free(c); }
    };
    std::unique_ptr<ks_client, Free> client_;
};

} // namespace keysmith

int main(int argc, char **argv) {
    if (argc < 4) {
        std::cerr << "usage: " << argv[0] << " SERVER_URL PUBLIC_KEY LICENSE_KEY [CACHE_DIR]\n";
        return 2;
    }
    try {
        std::optional<std::string> cache_dir;
        if (argc > 4) {
            cache_dir = argv[4];
        }
        const keysmith::Client client(argv[1], argv[2], "acme-editor", cache_dir);
        const keysmith::Validation license = client.validate(argv[3]);
        std::cout << "License check: " << license.code << " (" << license.source << ")\n";
        if (!license.valid) {
            std::cout << "Not licensed: " << license.message << "\n";
            return 1;
        }
        std::cout << "Licensed on plan " << license.plan.value_or("(none)") << "\n";
        if (license.has_feature("sso")) {
            std::cout << "Single sign-on is enabled.\n";
        }
        return 0;
    } catch (const keysmith::Error &e) {
        std::cerr << e.what() << "\n";
        return 2;
    }
}
