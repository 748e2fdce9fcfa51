//! Method names that may become NATS subjects.

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
}
