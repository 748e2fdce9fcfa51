//! The three roles and which device methods each may call. A role is held by
//! an operator and by each API token (`store::accounts`); what each role may
//! do is checked in one place, `ops::caller`.

use serde::{Deserialize, Serialize};

/// What a person or a token may do; each role may do everything the one
/// below it may. `SECURITY.md` has the table.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads devices, health and the audit log; calls the methods that only read.
    Viewer,
    /// Also calls every other device method.
    Operator,
    /// Also decides on device keys and manages operators and everyone's tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no role {0:?}: roles are viewer, operator and admin")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UnknownRole(text.chars().take(32).collect()))
    }
}

/// The methods that only read, which a viewer may call unless the setting
/// says otherwise; every other method needs an operator.
pub const DEFAULT_METHOD_ROLES: &str = "containers.list=viewer,containers.logs=viewer,\
containers.inspect=viewer,system.health=viewer,system.info=viewer,rpc.discover=viewer,*=operator";

/// The least role that may call each device method: `pattern=role` rules,
/// the first whose pattern matches wins. A pattern is a method name, or a
/// prefix ending in `*`; a method no rule matches needs an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRoles {
    rules: Vec<(String, Role)>,
}

/// Most rules the setting may hold; each call walks them.
const MAX_RULES: usize = 256;

impl MethodRoles {
    /// The role `method` needs.
    pub fn needed_for(&self, method: &str) -> Role {
        self.rules
            .iter()
            .find(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => method.starts_with(prefix),
                None => method == pattern,
            })
            .map_or(Role::Operator, |(_, role)| *role)
    }

    /// The rules in order: each pattern and the least role it needs (a
    /// method no rule matches needs an operator).
    pub fn rules(&self) -> impl Iterator<Item = (&str, Role)> {
        self.rules
            .iter()
            .map(|(pattern, role)| (pattern.as_str(), *role))
    }
}

impl Default for MethodRoles {
    fn default() -> Self {
        DEFAULT_METHOD_ROLES
            .parse()
            .expect("the default method roles parse")
    }
}

impl std::str::FromStr for MethodRoles {
    type Err = String;

    /// `containers.list=viewer,containers.*=operator,*=admin`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rules = text
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
            .map(|rule| {
                let (pattern, role) = rule
                    .split_once('=')
                    .ok_or_else(|| format!("{rule:?} is not pattern=role"))?;
                let pattern = pattern.trim();
                let name = pattern.strip_suffix('*').unwrap_or(pattern);
                let valid = name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
                    && (pattern.len() <= 128)
                    && !pattern.is_empty();
                if !valid {
                    return Err(format!(
                        "{pattern:?} is not a method name, or a prefix ending in '*'"
                    ));
                }
                let role = role
                    .trim()
                    .parse()
                    .map_err(|e: UnknownRole| e.to_string())?;
                Ok((pattern.to_owned(), role))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if rules.len() > MAX_RULES {
            return Err(format!("at most {MAX_RULES} method rules"));
        }
        Ok(MethodRoles { rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_lets_viewers_read_and_operators_do_the_rest() {
        let roles = MethodRoles::default();
        for method in [
            "containers.list",
            "containers.logs",
            "containers.inspect",
            "system.health",
            "system.info",
            "rpc.discover",
        ] {
            assert_eq!(roles.needed_for(method), Role::Viewer, "{method}");
        }
        for method in ["containers.stop", "containers.restart", "system.reboot"] {
            assert_eq!(roles.needed_for(method), Role::Operator, "{method}");
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_prefixes_match() {
        let roles: MethodRoles = "containers.stop=admin, containers.*=viewer, *=operator"
            .parse()
            .unwrap();
        assert_eq!(roles.needed_for("containers.stop"), Role::Admin);
        assert_eq!(roles.needed_for("containers.start"), Role::Viewer);
        assert_eq!(roles.needed_for("system.health"), Role::Operator);
        let no_catch_all: MethodRoles = "system.health=viewer".parse().unwrap();
        assert_eq!(no_catch_all.needed_for("anything.else"), Role::Operator);
    }

    #[test]
    fn a_bad_rule_is_refused_with_its_text() {
        for (text, says) in [
            ("containers.list", "not pattern=role"),
            ("containers.list=root", "no role \"root\""),
            ("con*tainers=viewer", "not a method name"),
            ("=viewer", "not a method name"),
        ] {
            let error = text.parse::<MethodRoles>().unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
