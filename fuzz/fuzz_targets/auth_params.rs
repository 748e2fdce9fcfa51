//! The params of `device.authenticate`, which the cloud reads from a party
//! that has proven nothing yet: whatever they are, reading them neither
//! panics nor accepts a device id, key or bridge version outside the rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::auth::AuthenticateParams;

const MAX_VERSION: usize = 64;

fuzz_target!(|text: &str| {
    let Ok(params) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if let Ok(read) = AuthenticateParams::read(Some(&params), MAX_VERSION) {
        assert!(protocol::is_valid_device_id(&read.device_id));
        assert!(read
            .bridge_version
            .is_none_or(|v| v.len() <= MAX_VERSION && v.bytes().all(|b| b.is_ascii_graphic())));
        assert_eq!(
            protocol::keys::public_key_from_pem(&read.public_key_pem),
            Ok(read.key)
        );
    }
});
