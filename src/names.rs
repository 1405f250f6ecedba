//! Enums a spec names by string (operators, samplers, variants, Jacobian modes): each has `ALL` and
//! `as_str`, and [`spec_names!`] derives `Display` (the spec name) and `FromStr` (back, or an error
//! listing the names) from them, so each name is written once.

/// `Display` and `FromStr` for an enum with `const ALL: [Self; N]` and `fn as_str(&self) -> &'static str`;
/// `$what` names the setting in errors (`invalid sampler "x" (expected one of …)`).
macro_rules! spec_names {
    ($t:ty, $what:literal) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = $crate::error::Error;
            fn from_str(s: &str) -> $crate::error::Result<Self> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                        $crate::error::Error::invalid(
                            $what,
                            s,
                            format!("one of {}", names.join(", ")),
                        )
                    })
            }
        }
    };
}
pub(crate) use spec_names;
