//! `fieldbridge passwd`: hash a broker user's password (Argon2id, as the guard verifies it) from
//! the terminal (asked twice, without echo) or from stdin, and print `USER:HASH` or write that
//! line into a password file (replaced atomically, mode 0600).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use crate::config::spec::access::user_name_problem;
use crate::guard::auth;

/// `fieldbridge passwd USER [--file F]`: exit 0 on success, 2 for a refused name or password,
/// 1 when the terminal or the file fails.
pub fn run(user: &str, file: Option<&Path>) -> ExitCode {
    if let Some(p) = user_name_problem(user) {
        eprintln!("user name {user:?} {p}");
        return ExitCode::from(2);
    }
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {user}: "));
        let again = rpassword::prompt_password("Again: ");
        match (first, again) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("the passwords differ; nothing written");
                return ExitCode::from(2);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("cannot read the password from stdin: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        eprintln!("empty password refused");
        return ExitCode::from(2);
    }
    let hash = match auth::hash_password(password.as_bytes()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match file {
        None => {
            println!("{user}:{hash}");
            ExitCode::SUCCESS
        }
        Some(f) => match auth::update_password_file(f, user, &hash) {
            Ok(()) => {
                eprintln!("{}: password of {user} set", f.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
