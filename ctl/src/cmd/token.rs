//! `otactl token create|list|revoke`: arguments, JSON documents, texts, and the calls.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use ota_proto::v1 as pb;
use serde::Serialize;

use super::{Ctx, id};
use crate::cli::IdArg;
use crate::output::{fmt_time, now_ms, render, table};
use crate::views::{ActorJson, EnumJson, actor};
use crate::{values, vocab};

// === arguments ===

/// `otactl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a bearer token; the secret is printed once
    ///
    /// Roles: viewer (read and watch), operator (checks, updates, rollouts), admin (firmware,
    /// tokens, sites). otad stores only a hash: copy the secret when it is shown.
    ///
    /// Example:
    ///   otactl token create alice --role operator --ttl 90d
    ///   export OTACTL_TOKEN=<the printed secret>
    #[command(verbatim_doc_comment)]
    Create(TokenCreateArgs),
    /// List tokens (never their secrets)
    ///
    /// Example:
    ///   otactl token list
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List,
    /// Revoke a token by its id
    ///
    /// Example:
    ///   otactl token revoke tok-3f9a
    #[command(verbatim_doc_comment)]
    Revoke(IdArg),
}

/// Roles a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Read and watch.
    Viewer,
    /// Checks, updates and rollouts.
    Operator,
    /// Firmware, tokens and sites.
    Admin,
}

/// `token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Who the token is for ("alice", "ci").
    #[arg(value_name = "NAME")]
    pub name: String,
    /// What the token may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Lifetime ("30d", "12h"); without it the token never expires.
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
}

// === command ===

/// Resolves `token create`.
pub fn resolve_create(a: &TokenCreateArgs) -> anyhow::Result<pb::CreateTokenRequest> {
    let name = a.name.trim();
    if name.is_empty() {
        anyhow::bail!("the token name is empty (say who it is for: \"alice\", \"ci\")");
    }
    let ttl_s = match a.ttl {
        None => 0,
        Some(d) if d.as_secs() == 0 => anyhow::bail!("--ttl must be at least one second"),
        Some(d) => d.as_secs(),
    };
    Ok(pb::CreateTokenRequest {
        name: name.to_string(),
        role: role(a.role) as i32,
        ttl_s,
    })
}

fn role(r: RoleArg) -> pb::Role {
    match r {
        RoleArg::Viewer => pb::Role::Viewer,
        RoleArg::Operator => pb::Role::Operator,
        RoleArg::Admin => pb::Role::Admin,
    }
}

/// Runs a `token` command.
pub async fn run(ctx: &Ctx, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create(a) => {
            let req = resolve_create(&a)?;
            let api = ctx.api().await?;
            let r = api.call(api.access().create_token(api.unary(req))).await?;
            let view = CreatedTokenJson {
                token: r.token.clone(),
                info: r.info.as_ref().map(TokenJson::new),
            };
            ctx.out.show(&view, created_token)?;
        }
        TokenCmd::List => {
            let api = ctx.api().await?;
            let r = api
                .call(
                    api.access()
                        .list_tokens(api.unary(pb::ListTokensRequest {})),
                )
                .await?;
            let view = TokenListJson {
                tokens: r.tokens.iter().map(TokenJson::new).collect(),
            };
            ctx.out.show(&view, token_list)?;
        }
        TokenCmd::Revoke(a) => {
            let token_id = id("token", &a.id)?;
            let api = ctx.api().await?;
            let t = api
                .call(
                    api.access()
                        .revoke_token(api.unary(pb::RevokeTokenRequest { id: token_id })),
                )
                .await?;
            ctx.out.show(&TokenJson::new(&t), token)?;
        }
    }
    Ok(())
}

// === JSON ===

/// A token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenJson {
    /// Public id.
    pub id: String,
    /// Who it is for.
    pub name: String,
    /// viewer, operator, admin.
    pub role: EnumJson,
    /// Created.
    pub created_at_ms: i64,
    /// Expiry; null: never.
    pub expires_at_ms: Option<i64>,
    /// Revoked.
    pub revoked: bool,
    /// Creator.
    pub created_by: Option<ActorJson>,
}

impl TokenJson {
    /// From the API.
    pub fn new(t: &pb::TokenInfo) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            role: EnumJson::new(t.role, vocab::role_name),
            created_at_ms: t.created_at_ms,
            expires_at_ms: (t.expires_at_ms != 0).then_some(t.expires_at_ms),
            revoked: t.revoked,
            created_by: actor(t.created_by.as_ref()),
        }
    }
}

/// `token create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedTokenJson {
    /// The bearer token (shown only here).
    pub token: String,
    /// Its description.
    pub info: Option<TokenJson>,
}

/// `token list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenListJson {
    /// Tokens.
    pub tokens: Vec<TokenJson>,
}

// === texts ===

/// `token list`.
pub fn token_list(l: &TokenListJson) -> String {
    let mut t = table(&["id", "name", "role", "created", "expires", "state"]);
    for k in &l.tokens {
        let expired = k.expires_at_ms.is_some_and(|e| e <= now_ms());
        t.add_row(vec![
            k.id.clone(),
            k.name.clone(),
            k.role.name.clone(),
            fmt_time(k.created_at_ms),
            k.expires_at_ms
                .map_or_else(|| "never".to_string(), fmt_time),
            if k.revoked {
                "revoked"
            } else if expired {
                "expired"
            } else {
                "active"
            }
            .to_string(),
        ]);
    }
    render(&t, "no tokens")
}

/// `token create`.
pub fn created_token(c: &CreatedTokenJson) -> String {
    let info = c.info.as_ref();
    let who = info.map_or_else(String::new, |i| {
        format!(
            " for {} ({}), id {}, expires {}",
            i.name,
            i.role.name,
            i.id,
            i.expires_at_ms
                .map_or_else(|| "never".to_string(), fmt_time)
        )
    });
    format!(
        "Token created{who}.\n\nSecret (shown only this once; otad keeps only a hash):\n\n    {}\n\n\
         Use it with:\n    export OTACTL_TOKEN='{}'",
        c.token, c.token
    )
}

/// `token revoke`.
pub fn token(k: &TokenJson) -> String {
    format!(
        "Token {} ({}, {}) is {}.",
        k.id,
        k.name,
        k.role.name,
        if k.revoked { "revoked" } else { "active" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn create_requests() {
        let r = resolve_create(&TokenCreateArgs {
            name: " ci ".into(),
            role: RoleArg::Operator,
            ttl: Some(Duration::from_secs(86_400)),
        })
        .unwrap();
        assert_eq!(
            r,
            pb::CreateTokenRequest {
                name: "ci".into(),
                role: 2,
                ttl_s: 86_400
            }
        );
        let never = resolve_create(&TokenCreateArgs {
            name: "a".into(),
            role: RoleArg::Viewer,
            ttl: None,
        })
        .unwrap();
        assert_eq!(never.ttl_s, 0);
        assert!(
            resolve_create(&TokenCreateArgs {
                name: "".into(),
                role: RoleArg::Admin,
                ttl: None
            })
            .is_err()
        );
        assert!(
            resolve_create(&TokenCreateArgs {
                name: "a".into(),
                role: RoleArg::Admin,
                ttl: Some(Duration::ZERO)
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn tokens_against_the_fake() {
        use crate::cli::{IdArg, OutputFormat};
        use crate::fake;
        let access = fake::Access::default();
        let log = access.log.clone();
        let server = fake::serve(fake::Rollouts::default(), access).await;

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        let create = TokenCmd::Create(TokenCreateArgs {
            name: "ci".into(),
            role: RoleArg::Operator,
            ttl: Some(Duration::from_secs(3600)),
        });
        run(&ctx, create).await.unwrap();
        let out = fake::printed(&buf);
        assert!(
            out.starts_with("Token created for ci (operator), id tok-1, expires never."),
            "{out}"
        );
        assert!(out.contains("\n    tok-1.s3cr3t\n"), "{out}");

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Json);
        run(&ctx, TokenCmd::List).await.unwrap();
        let list: serde_json::Value = serde_json::from_str(&fake::printed(&buf)).unwrap();
        assert_eq!(
            list["tokens"][0]["role"],
            serde_json::json!({"code": 1, "name": "viewer"})
        );

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        run(&ctx, TokenCmd::Revoke(IdArg { id: "tok-1".into() }))
            .await
            .unwrap();
        assert_eq!(
            fake::printed(&buf),
            "Token tok-1 (ci, viewer) is revoked.\n"
        );
        let (ctx, _) = fake::ctx(&server.url, OutputFormat::Table);
        let err = run(&ctx, TokenCmd::Revoke(IdArg { id: "tok-9".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no token \"tok-9\"");

        let log = log.lock().unwrap();
        assert!(
            log[0].contains("role: Operator") && log[0].contains("ttl_s: 3600"),
            "{log:?}"
        );
    }

    #[test]
    fn token_create_needs_a_known_role() {
        assert!(parse(&["token", "create", "alice", "--role", "root"]).is_err());
        let cli = parse(&[
            "token", "create", "alice", "--role", "admin", "--ttl", "30d",
        ])
        .unwrap();
        let Command::Token(TokenCmd::Create(a)) = cli.command else {
            panic!("not a token create");
        };
        assert_eq!(a.role, RoleArg::Admin);
        assert_eq!(a.ttl, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn token_expiry_is_null_when_never() {
        let t = pb::TokenInfo {
            id: "tok-1".into(),
            name: "ci".into(),
            role: 1,
            ..Default::default()
        };
        assert_eq!(
            json(&TokenJson::new(&t)),
            r#"{"id":"tok-1","name":"ci","role":{"code":1,"name":"viewer"},"created_at_ms":0,"expires_at_ms":null,"revoked":false,"created_by":null}"#
        );
    }

    #[test]
    fn the_token_secret_is_shown_plainly() {
        let s = created_token(&CreatedTokenJson {
            token: "tok-1.abc".into(),
            info: None,
        });
        assert!(s.contains("\n    tok-1.abc\n"));
        assert!(s.contains("shown only this once"));
    }
}
