//! # weir-derive: `#[derive(StableHash)]`
//!
//! The derive behind `weir_engine::StableHash`, so a user's own key type (a newtype
//! `AccountId(String)`, a struct of several fields, an enum) can key a stream. Use it
//! through a re-export (`weir_jobs::prelude`, `weir_operators::prelude` or `weir_engine`),
//! not from this crate.
//!
//! The generated `stable_hash` only feeds the field hashes to the engine's combinators
//! (`weir_engine::keys::hash_fields` and `hash_variant`): the mixing, and therefore the
//! stability contract, lives in one place, `weir_engine::keys`, whose docs state it.
//!
//! The code names the trait by an absolute path, because a derive cannot see how its user
//! reached it. [`macro@StableHash`] names `::weir_engine`; the hidden `StableHashViaJobs`
//! (re-exported as `StableHash` by `weir_jobs::prelude`) names `::weir_jobs::engine`, for
//! crates that depend on `weir-jobs` alone. A crate that renames its dependency writes
//! `#[stable_hash(crate = "path::to::weir_engine")]`.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::{parse_macro_input, parse_quote, Data, DeriveInput, Fields, Ident, Index, Path};

/// Derives `StableHash` for a struct or an enum from its fields' hashes; see
/// `weir_engine::keys` for the values (a newtype hashes like its one field, a struct like
/// the tuple of its fields in declaration order, an enum like its variant's index followed
/// by the variant's fields). Every field must implement `StableHash`; so must every type
/// parameter, which the impl requires.
#[proc_macro_derive(StableHash, attributes(stable_hash))]
pub fn derive_stable_hash(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input, parse_quote!(::weir_engine)).into()
}

/// [`macro@StableHash`] for crates that reach weir through `weir-jobs` only: the generated code
/// names the engine as `::weir_jobs::engine`. `weir_jobs::prelude` exports it as
/// `StableHash`.
#[doc(hidden)]
#[proc_macro_derive(StableHashViaJobs, attributes(stable_hash))]
pub fn derive_stable_hash_via_jobs(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input, parse_quote!(::weir_jobs::engine)).into()
}

fn expand(mut input: DeriveInput, default_crate: Path) -> Tokens {
    let krate = match crate_path(&input) {
        Ok(path) => path.unwrap_or(default_crate),
        Err(e) => return e.to_compile_error(),
    };
    let keys = quote!(#krate::keys);
    let body = match &input.data {
        Data::Struct(data) => {
            let hashes = data.fields.iter().enumerate().map(|(i, field)| {
                let member = match &field.ident {
                    Some(name) => quote!(#name),
                    None => {
                        let index = Index::from(i);
                        quote!(#index)
                    }
                };
                quote!(#keys::StableHash::stable_hash(&self.#member))
            });
            quote!(#keys::hash_fields(&[#(#hashes),*]))
        }
        Data::Enum(data) => {
            let arms = data.variants.iter().enumerate().map(|(index, variant)| {
                let name = &variant.ident;
                let index = index as u64;
                let bindings: Vec<Ident> = (0..variant.fields.len())
                    .map(|i| Ident::new(&format!("__field{i}"), proc_macro2::Span::call_site()))
                    .collect();
                let pattern = match &variant.fields {
                    Fields::Named(fields) => {
                        let names = fields.named.iter().map(|f| &f.ident);
                        quote!({ #(#names: #bindings),* })
                    }
                    Fields::Unnamed(_) => quote!(( #(#bindings),* )),
                    Fields::Unit => quote!(),
                };
                quote! {
                    Self::#name #pattern => #keys::hash_variant(
                        #index,
                        &[#(#keys::StableHash::stable_hash(#bindings)),*],
                    ),
                }
            });
            // An enum without variants has no values; `match *self {}` proves it.
            if data.variants.is_empty() {
                quote!(match *self {})
            } else {
                quote!(match self { #(#arms)* })
            }
        }
        Data::Union(data) => {
            return syn::Error::new(
                data.union_token.span,
                "StableHash cannot be derived for a union: which field is set is unknown",
            )
            .to_compile_error();
        }
    };
    // Every type parameter must hash stably for the type to (as `#[derive(Hash)]` does).
    let params: Vec<Ident> = input
        .generics
        .type_params()
        .map(|p| p.ident.clone())
        .collect();
    let where_clause = input.generics.make_where_clause();
    for param in params {
        where_clause
            .predicates
            .push(parse_quote!(#param: #keys::StableHash));
    }
    let name = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics #keys::StableHash for #name #type_generics #where_clause {
            #[inline]
            fn stable_hash(&self) -> u64 {
                #body
            }
        }
    }
}

/// The path given by `#[stable_hash(crate = "...")]`, if any.
fn crate_path(input: &DeriveInput) -> syn::Result<Option<Path>> {
    let mut path = None;
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("stable_hash"))
    {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let text: syn::LitStr = meta.value()?.parse()?;
                path = Some(text.parse()?);
                Ok(())
            } else {
                Err(meta.error("unknown stable_hash option; the one option is `crate = \"path\"`"))
            }
        })?;
    }
    Ok(path)
}
