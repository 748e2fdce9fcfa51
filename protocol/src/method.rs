//! Names that travel on the wire and end up in subjects, URLs and logs:
//! method names and device ids.

use crate::Refusal;

/// Accepts one or more tokens of `[A-Za-z0-9_-]` joined by single dots, and
/// nothing else: wildcards (`*`, `>`), empty tokens and whitespace would let a
/// name reach subscribers it was never meant for.
pub fn check_method_name(name: &str) -> Result<(), Refusal> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if name.split('.').all(token_ok) {
        Ok(())
    } else {
        Err(Refusal::BadMethodName(name.to_string()))
    }
}

/// Longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// A device id is 1 to 128 characters of `A-Z a-z 0-9 . _ -`: safe in a URL
/// path, a log line and a file name.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_dotted_names_pass() {
        for name in ["containers.list", "system.health", "a", "a-b_c.D9"] {
            assert!(check_method_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn wildcards_empty_tokens_and_spaces_are_refused() {
        for name in [
            "", "rpc.>", "a.*", "a..b", ".a", "a.", "a b", "a\tb", "é", ">",
        ] {
            assert!(check_method_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn device_ids_are_short_plain_names() {
        assert!(is_valid_device_id("device-001"));
        assert!(is_valid_device_id("rack4.node_7"));
        for id in ["", "a/b", "a b", "é", "../x", &"x".repeat(129)] {
            assert!(!is_valid_device_id(id), "{id:?}");
        }
    }
}
