//! Names that travel on the wire and end up in subjects, URLs and logs:
//! method names and device ids.

use crate::error::Refusal;

/// Longest method name accepted, in bytes. A name becomes the NATS subject
/// `rpc.<name>` and is logged and audited, so it stays short.
pub const MAX_METHOD_NAME_LEN: usize = 128;

/// How much of an over-long name a refusal repeats.
const REFUSED_NAME_SHOWN: usize = 32;

/// Accepts one or more tokens of `[A-Za-z0-9_-]` joined by single dots, at most
/// [`MAX_METHOD_NAME_LEN`] bytes in all, and nothing else: wildcards (`*`,
/// `>`), empty tokens and whitespace would let a name reach subscribers it was
/// never meant for, and a name of any length could exceed what NATS carries
/// in a subject.
pub fn check_method_name(name: &str) -> Result<(), Refusal> {
    if name.len() > MAX_METHOD_NAME_LEN {
        // The refusal is logged and sent back: it repeats only the start.
        let mut end = REFUSED_NAME_SHOWN;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        return Err(Refusal::BadMethodName(format!(
            "{}… ({} bytes, over the limit of {MAX_METHOD_NAME_LEN})",
            &name[..end],
            name.len()
        )));
    }
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
    fn names_up_to_the_length_limit_pass_and_longer_ones_are_refused() {
        let longest = format!("a.{}", "b".repeat(MAX_METHOD_NAME_LEN - 2));
        assert_eq!(longest.len(), MAX_METHOD_NAME_LEN);
        assert!(check_method_name(&longest).is_ok());

        let one_over = format!("{longest}c");
        match check_method_name(&one_over) {
            Err(Refusal::BadMethodName(shown)) => {
                assert!(shown.contains("129 bytes"), "{shown}");
                assert!(shown.contains("limit of 128"), "{shown}");
            }
            other => panic!("expected BadMethodName, got {other:?}"),
        }
    }

    #[test]
    fn a_refusal_of_a_huge_name_does_not_repeat_it_whole() {
        // Multi-byte characters: the shown start is cut on a character boundary.
        let huge = "é".repeat(1 << 20);
        let Err(Refusal::BadMethodName(shown)) = check_method_name(&huge) else {
            panic!("a 2 MiB name passed");
        };
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.contains(&format!("{} bytes", huge.len())), "{shown}");
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
