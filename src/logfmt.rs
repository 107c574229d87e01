//! Log-safe rendering of values a client or upstream chose (model names, paths, error
//! texts): control characters, newlines and escape sequences are written as `\u{..}` or
//! `\n`, so a request can neither forge a log line nor colour a terminal.

use std::fmt::{self, Display, Write};

/// Displays `T` with control characters escaped.
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapeControls(f), "{}", self.0)
    }
}

struct EscapeControls<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for EscapeControls<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(|c: char| c.is_control()) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or('\0');
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        let forged = "gpt-4o\n2026-11-27T00:00:00Z INFO forged \u{1b}[31mRED\u{7f} ✓";
        let shown = Escaped(forged).to_string();
        assert_eq!(
            shown,
            "gpt-4o\\n2026-11-27T00:00:00Z INFO forged \\u{1b}[31mRED\\u{7f} ✓"
        );
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'));
        assert_eq!(Escaped("plain").to_string(), "plain");
    }
}
